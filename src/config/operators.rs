//! The settings operators use to keep order in the room: `chat.reserved_nicks`, `[log]` and
//! `[moderation]` (docs/configuration.md). Kept apart from the room's own settings because they
//! concern who may be in the room and what the log says about them, not how the room looks.

use toml::de::DeValue;

use super::reader::{Result, Section};
use crate::moderation::Target;
use crate::protocol::command::is_valid_nick;

/// Nicks nobody may take with `/nick`, since people would read them as the server's voice.
pub const DEFAULT_RESERVED_NICKS: [&str; 7] =
    ["admin", "administrator", "chatd", "operator", "root", "server", "system"];

/// `[log]`: what the log tells about the room besides the server's own doings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// One info line per connect, nick change and disconnect (docs/operations.md).
    pub connections: bool,
}

impl Default for Log {
    fn default() -> Log {
        Log { connections: true }
    }
}

/// `[moderation]`: addresses kept out for good.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Moderation {
    /// Addresses or CIDR prefixes refused at accept.
    pub banned: Vec<Target>,
}

/// `chat.reserved_nicks`, lower-cased (they are matched case-insensitively).
pub(super) fn read_reserved_nicks(chat: &Section<'_>) -> Result<Vec<String>> {
    let Some(value) = chat.get("reserved_nicks") else {
        return Ok(DEFAULT_RESERVED_NICKS.iter().map(|n| (*n).to_owned()).collect());
    };
    strings(chat, "reserved_nicks", value, "an array of nicknames like [\"admin\"]", |nick| {
        if is_valid_nick(nick) {
            Ok(nick.to_ascii_lowercase())
        } else {
            Err(format!(
                "'{nick}' is no nickname: 1 to 32 letters, digits, '_' or '-', so nobody could \
                 take it anyway"
            ))
        }
    })
}

pub(super) fn read_log(root: &Section<'_>) -> Result<Log> {
    let s = root.table("log", &["connections"])?;
    Ok(Log { connections: s.bool("connections", Log::default().connections)? })
}

pub(super) fn read_moderation(root: &Section<'_>) -> Result<Moderation> {
    let s = root.table("moderation", &["banned"])?;
    let Some(value) = s.get("banned") else { return Ok(Moderation::default()) };
    let what = "an array of addresses or prefixes like [\"203.0.113.0/24\"]";
    let banned = strings(&s, "banned", value, what, Target::parse)?;
    Ok(Moderation { banned })
}

/// An array of strings, each turned into a value by `parse`; errors point at the item.
fn strings<T>(
    s: &Section<'_>,
    key: &'static str,
    value: &toml::Spanned<DeValue<'_>>,
    what: &str,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    let DeValue::Array(items) = value.get_ref() else {
        return Err(s.expected(key, value, what));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter() {
        let DeValue::String(text) = item.get_ref() else {
            return Err(s.expected(key, item, "a string"));
        };
        out.push(parse(text).map_err(|problem| s.invalid(key, item.span(), problem))?);
    }
    Ok(out)
}
