//! The tables `chatd who` and `chatd bans` print (their `--json` forms are the reply's lists).

use super::{BanEntry, WhoEntry};
use crate::config::duration::span;
use std::time::Duration;

/// One line per session, a header first and the count last.
pub fn format_who(who: &[WhoEntry]) -> String {
    let mut out = String::from(
        "nick                              address                  slot  transport  connected  idle     queued\n",
    );
    for w in who {
        let idle = w.idle_s.map_or("-".to_owned(), |s| span(Duration::from_secs(s)));
        let queued = w.queued_bytes.map_or("-".to_owned(), |b| b.to_string());
        out.push_str(&format!(
            "{:<33} {:<24} {:<5} {:<10} {:<10} {:<8} {}\n",
            w.nick,
            w.addr,
            w.slot,
            w.transport,
            span(Duration::from_secs(w.connected_s)),
            idle,
            queued
        ));
    }
    out.push_str(&format!("{} online\n", who.len()));
    out
}

/// One line per ban, a header first; `no bans` when there are none.
pub fn format_bans(bans: &[BanEntry]) -> String {
    if bans.is_empty() {
        return "no bans\n".to_owned();
    }
    let mut out =
        String::from("target                                       left       source   reason\n");
    for b in bans {
        let left = b.left_s.map_or("-".to_owned(), |s| span(Duration::from_secs(s)));
        out.push_str(&format!(
            "{:<44} {:<10} {:<8} {}\n",
            b.target,
            left,
            b.source,
            b.reason.as_deref().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_every_field() {
        let who = [WhoEntry {
            nick: "alice".into(),
            addr: "127.0.0.1:5000".into(),
            slot: 1,
            transport: "tcp".into(),
            connected_s: 3720,
            idle_s: Some(5),
            queued_bytes: None,
        }];
        let text = format_who(&who);
        assert!(text.contains("alice "), "{text}");
        assert!(text.contains(" 127.0.0.1:5000 "), "{text}");
        assert!(
            text.contains(" 1h02m ") && text.contains(" 5s ") && text.ends_with("-\n1 online\n"),
            "{text}"
        );
        let bans = [BanEntry {
            target: "10.0.0.0/8".into(),
            left_s: Some(90),
            reason: Some("spam".into()),
            source: "command".into(),
        }];
        let text = format_bans(&bans);
        assert!(
            text.contains("10.0.0.0/8 ")
                && text.contains(" 1m30s ")
                && text.ends_with("command  spam\n"),
            "{text}"
        );
        assert_eq!(format_bans(&[]), "no bans\n");
    }
}
